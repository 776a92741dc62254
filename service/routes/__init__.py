"""One router per resource; `service.app` combines them."""
