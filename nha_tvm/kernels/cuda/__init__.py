"""CUDA kernels written with their thread mapping, like TVM's own LLM kernels.

The portable definitions one folder up leave threads to a schedule; these fused kernels stage
tiles in shared memory and divide them among the threads of a block, which a schedule applied
afterwards cannot express as simply. Their schedule rule (``schedules/cuda/premapped.py``)
leaves them as written. Each is checked against the same float64 reference as the rest.
"""
