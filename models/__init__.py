"""The default model, shipped as package data: `memory_tiers.models` (data only, no code).

The checkpoint lives in the repository's models/ folder, beside its metrics and loss plot;
pyproject.toml maps this folder to the package `memory_tiers.models`, so a wheel, an sdist and
an editable install all carry it. `memory_tiers.settings.packaged_model()` finds it.
"""
