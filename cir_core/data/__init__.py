"""Dataset readers. Every reader returns a `TripletSplit`; training and evaluation consume only that."""
from cir_core.data.triplets import Triplet, TripletSplit

__all__ = ["Triplet", "TripletSplit"]
