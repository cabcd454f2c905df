from covidct.cli import main

main()
