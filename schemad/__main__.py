from schemad.cli import main

main()
