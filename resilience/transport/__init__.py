"""kombu extensions: fast consumer reconnects, the hand-over of unacked messages, the result
backend's connection state."""
