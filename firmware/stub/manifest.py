"""Write the stub manifest: per family group its binary, CPU, load address, size, CRC-32."""

import json
import sys
import zlib
from pathlib import Path

build, out, groups = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
manifest = {}
for g in groups:
    name, cpu, load = g.split(":")
    data = (build / f"stub-{name}.bin").read_bytes()
    manifest[name] = {
        "file": f"stub-{name}.bin",
        "cpu": cpu,
        "load": load,
        "size": len(data),
        "crc32": f"0x{zlib.crc32(data):08X}",
    }
out.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
