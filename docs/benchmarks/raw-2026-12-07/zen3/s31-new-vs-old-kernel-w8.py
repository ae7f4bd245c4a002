"""A/B of session 30's kernel (odd runs) against the current one (even runs), in one process."""
import sys, tempfile
sys.path.insert(0, "/work/main/bench")
import engine_throughput as et
from torch.utils.cpp_extension import load
from leafe.policy import native_kernels as nk
old = load(name="old_ragged", sources=["/tmp/old_kernel/ragged_attention.cpp"], extra_cflags=list(nk.CFLAGS),
           extra_ldflags=list(nk.LDFLAGS), build_directory=tempfile.mkdtemp(), verbose=False).ragged_attention
calls = {"n": 0}
real = et.load_policy
def patched(cfg):
    policy = real(cfg)
    if calls["n"] % 2 == 1:
        policy.net.ragged = old
        print("[this run: session 30's kernel]", flush=True)
    else:
        print("[this run: the current kernel]", flush=True)
    calls["n"] += 1
    return policy
et.load_policy = patched
sys.argv = ["engine_throughput.py", "--backends", "native", "native", "native", "native", "--history-window", "8",
            "--json", sys.argv[1]]
et.main()
