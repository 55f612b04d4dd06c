"""The Kubernetes edge: the one client, its errors and types, informer caches."""
