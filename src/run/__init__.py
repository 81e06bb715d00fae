"""The run skeleton every script uses: what surrounds a training loop so that runs survive launchers, clusters,
faults and bad input.

- ``launch``: ``cli`` (every script's ``__main__``: one-line errors) and ``launch`` (any launcher, spawned or not);
- ``loop``: :class:`Run`: output folder, resume, seed, args.json, the loop's stop / ``--max_iters`` / checkpoint /
  NaN control, atomic saves with exports and numbered copies;
- ``checkpoint``: atomic, umask-honouring files, one-line read / write errors, per-rank side files, RNG states;
- ``signals``: SIGTERM / SIGUSR1 as a stop flag (DataLoader workers keep serving, other children die);
- ``health``: non-finite losses, BatchNorm statistics and features;
- ``sync``: every rank's RNG states, the once-per-epoch replicated-state check.

Imports: ``src.run.dist``, ``src.run.errors``, ``src.run.logging`` and torch; never a script, a method or a model.
"""
