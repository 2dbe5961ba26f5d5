"""The wire contract shared by the daemon, the SDK and the OpenAPI description.

Standard library only, and the lowest layer of the house: everything may import
it, it imports nothing of hecated's.
"""
