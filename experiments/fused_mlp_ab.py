"""fused_mlp against the same nn.Sequential eager: the MLP autoencoder's network 784-128-64-128-784,
forward + backward at one batch size and dtype, in one process, alternating; process CPU time and
wall time per step (ms), two rounds; with a third argument, the torch profiler's table of each.
fastae.keep_freed_memory() first, as the fastae command runs. Set FASTAE_CPU_ONEDNN=0|1 to pick
the C++ op's GEMM library (read once per process).

    python experiments/fused_mlp_ab.py 256 fp32|bf16 [profile]
"""
import sys
import time

import torch

import fastae

fastae.keep_freed_memory()
from fastae.bench.train import PlainMLPAutoencoder, _MLP_ACTS
torch.manual_seed(0)
B=int(sys.argv[1]); dt=torch.bfloat16 if sys.argv[2]=='bf16' else torch.float32
net = PlainMLPAutoencoder().net.to(dt)
lin=[m for m in net if isinstance(m, torch.nn.Linear)]
W=[m.weight for m in lin]; Bs=[m.bias for m in lin]; params=W+Bs
x=torch.rand(B,784).to(dt); grad=torch.randn(B,784).to(dt)
def step(fn):
    def s():
        for p in params: p.grad=None
        fn(x).backward(grad)
    return s
fused=step(lambda x: fastae.ops.fused_mlp(x, W, Bs, _MLP_ACTS)); eager=step(net)
def cpu(f, n=30):
    for _ in range(5): f()
    t=time.process_time(); w=time.perf_counter()
    for _ in range(n): f()
    return round((time.process_time()-t)/n*1000,3), round((time.perf_counter()-w)/n*1000,3)
for r in range(2): print(B, sys.argv[2], 'fused (cpu,wall)', cpu(fused), 'eager', cpu(eager))
if len(sys.argv)>3:
    from torch.profiler import profile, ProfilerActivity
    for name,f in (('fused',fused),('eager',eager)):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(10): f()
        print(name); print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=36, max_shapes_column_width=50))
