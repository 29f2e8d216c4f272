from vimpo_bench.cli import main

main()
