from tpc.cli import main

main()
