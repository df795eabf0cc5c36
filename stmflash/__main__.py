from stmflash.cli import main

main()
