from mlp_experiments.sweep.command import main

main()
