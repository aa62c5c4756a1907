from gateway.agent.process import main

main()
