"""`python -m lkm_core.network`: the presets, their patch sizes and parameter counts."""

from __future__ import annotations

import argparse

from . import build_network, count_parameters, presets


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lkm_core.network", description=__doc__)
    parser.add_argument("--classes", type=int, default=14,
                        help="output classes (parameter counts depend on it slightly; 14 = BTCV's 13 organs + background)")
    args = parser.parse_args(argv)
    print(f"{'preset':10} {'patch':>12} {'stages':>6} {'parameters':>12} {'without PiM/PaM':>16}")
    for name in presets.PRESET_NAMES:
        kwargs = presets.preset_config(name, 1, args.classes)["kwargs"]
        full = count_parameters(build_network(presets.preset_config(name, 1, args.classes)))
        conv = count_parameters(build_network(presets.preset_config(name, 1, args.classes, use_pim=False, use_pam=False)))
        patch = "x".join(map(str, presets.preset_patch_size(name)))
        print(f"{name:10} {patch:>12} {kwargs['n_stages']:>6} {full:>12,} {conv:>16,}")


if __name__ == "__main__":
    main()
