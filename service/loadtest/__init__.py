"""`regionlock bench`: request mixes, h2load and stream drivers, reports; a client of the API, not the server."""
