"""The HTTP surface: middlewares, error bodies, routes and the server runner."""
