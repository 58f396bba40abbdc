from mlp_experiments.rerun.command import main

main()
