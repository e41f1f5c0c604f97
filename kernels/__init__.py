"""Triton kernels of fastae; installed as fastae.kernels. Imports only torch and triton."""
