-- The image creates the `shoprec` database (Feast's SQL registry); Airflow gets its own.
CREATE DATABASE airflow;
