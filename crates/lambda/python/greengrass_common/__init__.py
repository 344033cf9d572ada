"""Lichen's runtime modules for the Greengrass V1 `greengrasssdk` (what a V1 core's Lambda
runtime provided): the environment it reads and the IPC client it calls."""
