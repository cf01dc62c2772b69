"""Draws `rpa bench --json` output: decode throughput (KV GB/s) against context length per backend, with
each backend's measured bandwidth limit as a dashed line. Usage: python3 bench_plot.py RUN.json OUT.png"""

import json
import sys

try:
    import matplotlib
except ImportError:
    sys.exit("rpa bench --plot needs matplotlib (Debian: apt-get install python3-matplotlib)")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(json_path, png_path):
    run = json.load(open(json_path))
    sweep = [r for r in run["rows"] if r["workload"].startswith("ctx ")]
    if not sweep:
        sys.exit("%s has no context sweep (run rpa bench with --workloads context)" % json_path)
    fig, ax = plt.subplots(figsize=(8, 5))
    for backend in sorted({r["backend"] for r in sweep}):
        rows = sorted((r for r in sweep if r["backend"] == backend), key=lambda r: int(r["workload"][4:]))
        contexts = [int(r["workload"][4:]) for r in rows]
        line, = ax.plot(contexts, [r["kv_bytes_per_s"] / 1e9 for r in rows], marker="o", label=backend)
        ax.plot(contexts, [r["read_bandwidth"] / 1e9 for r in rows], linestyle="--", color=line.get_color(),
                label="%s: measured bandwidth" % backend)
    shape = run["shape"]
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("KV read throughput (GB/s)")
    ax.set_title("rpa %s decode, QH %d KVH %d D %d page %d, %s KV\n%s%s" % (
        run["rpa_version"], shape["q_heads"], shape["kv_heads"], shape["head_dim"], shape["page_size"],
        shape["kv_dtype"], run["cpu_model"], ("; " + run["gpu_model"]) if run["gpu_model"] else ""), fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
