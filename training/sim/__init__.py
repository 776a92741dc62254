"""Ray-traced fingerprint data (Sionna RT): scene -> positions -> rays -> measurement -> HDF5.

`scene` (SceneSpec, user-definable in JSON/YAML), `builtin` (industrial, lab-los,
lab-nlos), `raytrace` (Sionna RT -> CFR), `measurement` (noise and offsets),
`presets` (tiny, paper), `generate` (the pipeline), `plot` (PNG per environment).
Sionna is imported only when tracing starts, so the rest works without it.
"""
