"""fedvssl: federated self-supervised learning on video (FedVSSL, ECCV 2022) on Flower."""

__version__ = "0.1.0"
