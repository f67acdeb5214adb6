"""Dataset import (Labelme, colour and index masks), the canonical layout, and tf.data."""
