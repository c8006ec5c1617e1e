"""`torchrun -m tinyllama.train CONFIG [--resume] [--set KEY=VALUE ...]`."""

from tinyllama.train.loop import main

main()
