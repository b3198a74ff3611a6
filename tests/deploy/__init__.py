"""Offline checks of the deployment artefacts: Kubernetes manifests, Serve config, Docker image."""
