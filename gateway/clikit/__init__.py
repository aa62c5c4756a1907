"""How every ``shadowtune`` command is built: one set of options, one way to print, one way to register.

* `gateway.clikit.options` — the shared options (``--log-dir``, ``--json``, the gateway's URL and
  token, durations and moments as click types) and `handle_errors`, which turns the packages'
  own errors into one-line ``click.ClickException``s.
* `gateway.clikit.output` — printing: `echo_json` (one JSON style), `emit` (JSON or text),
  `table` (text columns with a header).
* `gateway.clikit.registry` — the root group. Every group is named by ``NAME = module:attr``
  and loaded only when named: the gateway's own groups in `registry.BUILTIN`, the trainer's
  and evals' (and any plugin's) under the ``shadowtune.commands`` entry-point group, so
  ``shadowtune serve`` never imports torch.

A command inside a group is defined in the group's module with ``@group.command``; a command
that lives in another module joins a group with one ``group.add_command(cmd)`` line at the
bottom of the group's module. Nothing here imports the server.
"""
