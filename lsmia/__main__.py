from lsmia.cli import main

main()
