"""Result backend drivers shipped with conveyor. Each is imported only when its scheme is used."""
