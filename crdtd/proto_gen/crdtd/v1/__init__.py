"""Generated gRPC stubs (crdtd.sync.protogen); do not edit."""
