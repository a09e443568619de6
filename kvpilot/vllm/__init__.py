"""kvpilot on a vLLM server: observe (/metrics collector), control (a supervisor that applies versioned
VLLMConfigs by graceful restart) and tune (trials as vLLM servers under kvpilot's traces).

kvpilot never imports vLLM: servers run from their own environment (`make vllm-env`) and are reached over
HTTP. VLLMConfig lives in the foundation layer (`kvpilot.vllm_config`: the registry validates it); this package
is layer 3, beside the probes and the tuner.
"""
