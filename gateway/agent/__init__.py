"""The host's log agent and the ``serve`` supervisor.

``shadowtune serve`` runs a supervisor (`supervisor`) that holds the listening socket and
starts N request workers (`worker`) and ONE log agent process (`process`) per host:

* a request worker does HTTP and one WAL append per call (`gateway.store.wal`), nothing
  else; it imports neither pyarrow, DuckDB nor the OpenTelemetry SDK, and forwards the
  pages that read the log (``/review``, ``/metrics``, ``/admin/status``, ``/admin/flush``)
  to the agent over a unix socket (`proxy`);
* the agent (`core.LogAgent`) tails every worker's WAL as it is written for telemetry
  (one set of metrics for the host), converts closed segments to Parquet through
  `gateway.store.writer.LogWriter`, compacts, applies retention, and runs the periodic
  jobs (`gateway.jobs`);
* the supervisor restarts the agent if it dies (the workers keep appending meanwhile), and
  the workers and the agent exit when the supervisor dies (a pipe they watch closes).

Nothing is imported here: the worker imports `gateway.agent.proxy` and `worker` only.
"""
