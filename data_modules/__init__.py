"""Data layer: the TeacherStudentDataModule shared by SFT and RL, its sources, schemas and synthetic data."""

from data_modules.sources import DataError
from data_modules.teacher_student import TeacherStudentDataModule

__all__ = ["DataError", "TeacherStudentDataModule"]
