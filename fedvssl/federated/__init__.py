"""Stage 5, federated pretraining on Flower: the ServerApp and ClientApp, the FedVSSL
strategy and its arithmetic, a client's local training, and tensors in Flower's records."""
