"""The paper's comparison (Fig. 6): K-fold runs of scratch, DTL and MEML at growing data fractions.

- `grid`: runs, presets (`quick`, `paper`, `paper-full`) and seeds;
- `sources`: source models (MEML, DTL), trained once per experiment and cached;
- `jobs`: one target run: split, training, test metrics;
- `runner`: resumable, parallel execution of a preset (`run_experiment`);
- `store`: one atomically written JSON file per finished run;
- `aggregate`, `claims`, `report`: fold statistics, the paper's claims, CSV,
  tables, figures and the markdown report.

Entry point: `csipos experiment --preset quick|paper --data FILE --out DIR`.
"""
