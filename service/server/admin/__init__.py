"""Admin: the AdminService servicer over the override store, reloads and status."""
