from runlease.cli.main import main

main()
