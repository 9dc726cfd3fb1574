from schemad.entry import main

main()
