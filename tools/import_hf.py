#!/usr/bin/env python3
"""Import an exported transformers folder (tools/export_hf.py) back into a training checkpoint:

  python tools/import_hf.py --load exports/flm-tiny --save runs/imported
  python pretrain_flm.py --load runs/imported --start-new-stage ...   # any TP/PP; a fresh optimizer

Tensor by tensor (memory: about one tensor); builds SAVE.partial/ and renames it when complete.
Export -> import -> export reproduces the export byte for byte. See flm_ext/export/importer.py.
"""
import argparse
import sys

from flm_ext import quiet_megatron_import_warnings
from flm_ext.fileio import stop_cleanly_on_sigterm

quiet_megatron_import_warnings()
from flm_ext.export.options import ImportArgs  # noqa: E402
from flm_ext.flags import add_flags  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, ImportArgs)
    return p.parse_args(argv)



def main(argv=None) -> int:
    args = parse_args(argv)
    stop_cleanly_on_sigterm("import_hf")
    from flm_ext.export import ExportError
    from flm_ext.export.importer import import_hf

    try:
        import_hf(args.load, args.save, log=lambda m: print(m, flush=True))
    except ExportError as e:
        print(f"import_hf: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
