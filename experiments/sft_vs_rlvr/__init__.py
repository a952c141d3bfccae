"""The SFT-versus-RLVR study (`python -m experiments.sft_vs_rlvr --config lightning_configs/sft_vs_rlvr_quickstart.yaml`).

Layout under the study's out_dir: base/ (the base checkpoint, made once), seed-<seed>/{sft,rlvr}/ (the arms' ordinary
run folders), seed-<seed>/eval.yaml and eval/ (one `rcl evaluate` of sft, rlvr and base), seed-<seed>/{study.json,
report.md,*.png}, and at the top study.json and report.md (the first seed's arms and difference, and the spread over
seeds).
"""
