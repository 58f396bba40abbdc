from mlp_experiments.report.command import main

main()
