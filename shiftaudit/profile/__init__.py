"""The layer profile (science.md, "Per-layer equivariance, aliasing and receptive fields").

One module per concept: `geometry` (where a tensor's positions are), `ideal_shift` (T_d),
`equivariance` (the errors), `graph` (a format-neutral graph), `receptive_fields` (Dang's
arithmetic and the roles), `torus` (padding made circular), `onnx_graph` and `fx_graph` (the
two formats with graph access), `findings` (the diagnosis, and `findings_lines` for the CLI)
and `layer_profile` (all of it for one model, and `layer_profile_forward_passes`, its cost).

Nothing is imported here, so that the CLI can format a report without importing torch.
"""
