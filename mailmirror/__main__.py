from mailmirror.main import main

main()
