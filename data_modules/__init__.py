"""Data layer: the TeacherStudentDataModule shared by SFT and RL, its sources, schemas and synthetic data."""
