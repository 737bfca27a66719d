"""`ddpm-rt bench`: eager PyTorch against every other backend on the same work, side by side.

timing.py   the per-call timer, summary statistics, the RSS sampler
machine.py  what the numbers were measured on (CPU, versions, load)
suites.py   the backend suite (same bundle, plan, batches and noise for all backends)
pipeline.py diffusers' DDIMPipeline in eager mode against our loop on the same UNet
report.py   text / Markdown tables;  plot.py  the PNG
parity.py   the parity figures (max-abs, relative RMS) every bench and check reports
quality_sweep.py  time to quality: sampler × steps, scored with the model's metric (`bench --quality`)
selfcheck.py      the GPU self-check harness behind `ddpm-rt selfcheck`
"""
