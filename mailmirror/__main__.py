from mailmirror.cli import main

main()
