import signal

# Until uvicorn installs its handlers, a SIGTERM (the whole process group stopping) must not
# kill the agent before it has converted what the workers leave: it stops on the supervisor's
# pipe closing instead (`gateway.agent.process`).
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)

from gateway.agent.process import main  # noqa: E402

main()
