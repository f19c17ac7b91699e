-- Run once by the postgres image on an empty data directory (deploy/compose.yaml):
-- the control database (Topology Service + move state) and one database per cell.
CREATE DATABASE cm_control;
CREATE DATABASE cm_cell1;
CREATE DATABASE cm_cell2;
CREATE DATABASE cm_cell3;
