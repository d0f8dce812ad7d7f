"""Cloud TPU launch scripts (gcloud wrappers); run as `python -m tpu.pod`."""
