from envkit.entry import main

main()
